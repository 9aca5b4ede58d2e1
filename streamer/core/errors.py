"""Named errors. Every failure a user can meet is one of these, with a message that says what to do."""

from __future__ import annotations

# Exit codes of ``streamer consume`` and ``streamer replicate`` (README, "Exit codes"); the
# supervisor of ``consume --processes N`` reports a child's exit in the same words.
EXIT_DONE = 0
EXIT_STOPPED_ON_RECORD = 1  # also: any other named error of the other commands
EXIT_SETTINGS = 2
EXIT_UNAVAILABLE = 3
EXIT_INTERNAL = 4

EXIT_REASONS = {
    EXIT_DONE: "done",
    EXIT_STOPPED_ON_RECORD: "stopped on a record (or another named error)",
    EXIT_SETTINGS: "bad settings",
    EXIT_UNAVAILABLE: "source, broker or target unavailable",
    EXIT_INTERNAL: "internal error",
}


def exit_reason(code: int) -> str:
    """What an exit code of ``streamer consume``/``replicate`` means, in the words of the README's table."""
    return EXIT_REASONS.get(code, "unknown exit code")


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines too) as one space: for the single stderr line."""
    return " ".join(text.split())


class StreamerError(Exception):
    """Base of all of streamer's errors; the CLI prints ``streamer: <headline>: <message>`` and exits ``exit_code``."""

    exit_code: int = EXIT_STOPPED_ON_RECORD
    headline: str = "error"


class SettingsError(StreamerError):
    """A setting is missing, malformed or out of range; the message names the key and where it came from."""

    exit_code = EXIT_SETTINGS
    headline = "bad settings"


class RecordStoppedError(StreamerError):
    """A record or change cannot be applied and the error policy is ``stop``: exit 1, never restarted."""

    exit_code = EXIT_STOPPED_ON_RECORD
    headline = "stopped on a record"


class UnavailableError(StreamerError):
    """A part streamer depends on could not be reached (after the retries); running again later resumes."""

    exit_code = EXIT_UNAVAILABLE
    headline = "unavailable"


class SourceUnavailableError(UnavailableError):
    """The source database (``streamer replicate``) could not be reached or dropped the replication connection."""

    headline = "source unavailable"


class BrokerUnavailableError(SourceUnavailableError):
    """The Kafka broker (the consumer's source) failed fatally or could not take a dead letter."""

    headline = "broker unavailable"


class NoAssignmentError(BrokerUnavailableError):
    """The consumer group never completed a rebalance for this member (no partitions, not even an
    empty assignment) within ``consumer.assignment_timeout_s``."""

    headline = "no partitions assigned"


class TargetUnavailableError(UnavailableError):
    """The target database could not be reached, or kept failing transiently through every retry."""

    headline = "target unavailable"


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


class ReplicationUnavailableError(ReplicationError, SourceUnavailableError):
    """The source could not be connected to, or the replication connection was lost through every retry."""

    exit_code = EXIT_UNAVAILABLE
    headline = "source unavailable"


class ReplicationSetupError(ReplicationError):
    """The source is not set up for ``streamer replicate`` (exit 2, like bad settings): fix it and run again."""

    exit_code = EXIT_SETTINGS
    headline = "source not set up"


class WalLevelError(ReplicationSetupError):
    """The source's ``wal_level`` is not ``logical``."""


class ReplicationPrivilegeError(ReplicationSetupError):
    """The source role may not open a replication connection (no REPLICATION attribute, or pg_hba)."""


class SlotNotFoundError(ReplicationSetupError):
    """The replication slot does not exist (``--create`` makes it), or is not a pgoutput slot of this database."""


class SlotInUseError(ReplicationUnavailableError):
    """Another process (``active_pid``) is reading the replication slot."""

    headline = "slot in use"


class SlotStillActiveError(ReplicationError):
    """``connectors delete --drop-slot``: the slot is still read after the connector is gone; nothing dropped."""

    headline = "slot still active"

    def __init__(
        self, connector: str, slot: str, publication: str, pid: int | None, waited_s: float, reader: str
    ) -> None:
        self.connector, self.slot, self.publication, self.pid = connector, slot, publication, pid
        who = f"walsender pid {pid}" if pid is not None else "a reader"
        seen = f" ({reader})" if reader else ""
        q = slot.replace("'", "''")
        super().__init__(
            f"connector {connector} is deleted, but its replication slot {slot!r} is still read by {who}{seen} "
            f"{waited_s:.0f}s later: another connector or process uses it, so neither the slot nor publication "
            f"{publication!r} was dropped. Find the reader in pg_stat_replication"
            f"{f' (pid {pid})' if pid is not None else ''}, stop it, then run "
            f"SELECT pg_drop_replication_slot('{q}'); DROP PUBLICATION \"{publication}\";"
        )


class SlotAheadError(ReplicationError):
    """The slot's confirmed position is beyond the target's position for it: changes may have been passed."""

    headline = "slot ahead of the target"

    def __init__(self, slot: str, slot_lsn: str, group: str, target_lsn: str) -> None:
        self.slot, self.slot_lsn, self.group, self.target_lsn = slot, slot_lsn, group, target_lsn
        super().__init__(
            f"replication slot {slot!r} is confirmed up to LSN {slot_lsn}, beyond the target's position "
            f"{target_lsn} (_streamer_offsets, group {group!r}): the server would not send the transactions "
            "committed between the two, and they may not be in the target. Re-create the slot and reload the "
            "tables (streamer load), or, if nothing published changed between these LSNs, record the slot's "
            "LSN as the target's position for this group"
        )


class PublicationNotFoundError(ReplicationSetupError):
    """The publication does not exist (``--create --tables ...`` makes it) or publishes nothing."""


class TableIdentityError(ReplicationSetupError):
    """A published table has no primary key nor replica identity index, so its changes carry no key."""


class ReplicationApplyError(ReplicationError, RecordStoppedError):
    """A change could not be converted or applied and the error policy is ``stop``; names its LSN."""

    def __init__(self, lsn: str, reason: str) -> None:
        self.lsn, self.reason = lsn, reason
        super().__init__(
            f"change at LSN {lsn} cannot be applied: {one_line(reason)} (error_policy=stop: the target and the slot "
            "stay at the transaction before it; fix the cause and run again, or use --error-policy dlq "
            "--dlq-file PATH to set such changes aside)"
        )
