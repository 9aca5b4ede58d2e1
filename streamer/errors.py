"""Named errors. Every failure a user can meet is one of these, with a message that says what to do."""

from __future__ import annotations


class StreamerError(Exception):
    """Base of all of streamer's errors; the CLI prints the message and exits non-zero."""

    exit_code: int = 1


class SettingsError(StreamerError):
    """A setting is missing, malformed or out of range; the message names the key and where it came from."""


class StackError(StreamerError):
    """The local stack could not be started, stopped or inspected."""


class PrerequisiteError(StackError):
    """Something the native stack needs is not installed; the message names the package."""


class DecodeError(StreamerError):
    """A Kafka record could not be decoded into a change event.

    Carries the record's coordinates so the error policy (stop or dead-letter) can name it.
    """

    def __init__(self, reason: str, topic: str = "", partition: int = -1, offset: int = -1) -> None:
        self.reason = reason
        self.topic = topic
        self.partition = partition
        self.offset = offset
        super().__init__(f"{topic}[{partition}]@{offset}: {reason}" if topic else reason)

    def at(self, topic: str, partition: int, offset: int) -> DecodeError:
        """The same error, placed at a record's coordinates."""
        err = type(self)(self.reason, topic, partition, offset)
        err.__cause__ = self.__cause__
        return err


class ConnectError(StreamerError):
    """Kafka Connect's REST API answered with an error or could not be reached."""


class ConnectorFileError(StreamerError):
    """A connector file in ``connectors/`` is malformed; nothing has been pushed."""


class ConnectorNotFoundError(ConnectError):
    """Kafka Connect has no connector of that name."""


class ConnectorValidationError(ConnectorFileError):
    """Connect rejected the config of one or more connector files (each error by file and key); nothing pushed."""


class ConnectorFailedError(ConnectError):
    """A connector or one of its tasks is FAILED (the message holds Connect's trace), or did not reach RUNNING."""


# ---------------------------------------------------------------- direct replication (issue 7)
class ReplicationError(StreamerError):
    """``streamer replicate`` cannot read the source's logical replication stream."""


class WalLevelError(ReplicationError):
    """The source's ``wal_level`` is not ``logical``."""


class ReplicationPrivilegeError(ReplicationError):
    """The source role may not open a replication connection (no REPLICATION attribute, or pg_hba)."""


class SlotNotFoundError(ReplicationError):
    """The replication slot does not exist (``--create`` makes it), or is not a pgoutput slot of this database."""


class SlotInUseError(ReplicationError):
    """Another process (``active_pid``) is reading the replication slot."""


class SlotAheadError(ReplicationError):
    """The slot's confirmed position is beyond the target's position for it: changes may have been passed."""

    def __init__(self, slot: str, slot_lsn: str, group: str, target_lsn: str) -> None:
        self.slot, self.slot_lsn, self.group, self.target_lsn = slot, slot_lsn, group, target_lsn
        super().__init__(
            f"replication slot {slot!r} is confirmed up to LSN {slot_lsn}, beyond the target's position "
            f"{target_lsn} (_streamer_offsets, group {group!r}): the server would not send the transactions "
            "committed between the two, and they may not be in the target. Re-create the slot and reload the "
            "tables (streamer load), or, if nothing published changed between these LSNs, record the slot's "
            "LSN as the target's position for this group"
        )


class PublicationNotFoundError(ReplicationError):
    """The publication does not exist (``--create --tables ...`` makes it) or publishes nothing."""


class TableIdentityError(ReplicationError):
    """A published table has no primary key nor replica identity index, so its changes carry no key."""


class ReplicationApplyError(ReplicationError):
    """A change could not be converted or applied and the error policy is ``stop``; names its LSN."""

    def __init__(self, lsn: str, reason: str) -> None:
        self.lsn, self.reason = lsn, reason
        super().__init__(
            f"change at LSN {lsn} cannot be applied: {reason} (error_policy=stop: the target and the slot "
            "stay at the transaction before it; fix the cause and run again, or use --error-policy dlq "
            "--dlq-file PATH to set such changes aside)"
        )
