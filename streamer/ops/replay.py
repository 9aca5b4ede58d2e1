"""``streamer replay``: move a consumer group to other offsets, in Kafka and in the target together.

``streamer consume`` keeps each partition's next offset in two places: the group's committed
Kafka offsets and the target's ``_streamer_offsets`` rows (written in the same transaction as
the rows they cover). On assignment it starts from the larger of the two. So a replay must move
both, or the one it leaves ahead wins and the replay silently does nothing.

``--to`` takes one of

* ``earliest``: the first offset still in each partition (the low watermark);
* ``latest``: the true end of each partition (the high watermark read from a fetch response,
  see :mod:`streamer.ops.groups`; never ListOffsets "latest", which is wrong on the local broker);
* an ISO-8601 timestamp (``2025-05-01T12:00:00Z``; without a zone it is UTC): per partition the
  first record whose timestamp is at or after it (``offsets_for_times``), or the end when none is;
* ``TOPIC:PARTITION:OFFSET`` positions (repeat ``--to``, separate them with commas, or list them
  after the first): only those partitions move, each within its low and high watermarks.

The topics, unless positions name them: with ``--topics REGEX``, the existing topics it matches;
otherwise the topics the group has offsets for (in Kafka or in the target) plus the topics the
consumer subscribes to (``consumer.topics``, else derived from the connector files).

Safety
------
A replay is refused while the group has active members (they would overwrite the new offsets
with their next commit, and they do not re-read offsets until their next assignment); the error
names each member (consumer id, client id, host). ``--dry-run`` prints per partition the committed
Kafka offset, the target's stored offset, where the consumer would start now, the new offset and
how many records would be read again (or skipped), and changes nothing.

Order of the two writes
-----------------------
Kafka first, then the target (one transaction for every partition). The broker refuses an
offset commit for a group that has members (``UNKNOWN_MEMBER_ID``), so a consumer that joined
after the membership check stops the replay before anything is written. A crash between the
two writes cannot make a consumer skip a record it was not asked to skip, whichever way a
partition moves, because the consumer starts from the larger of the two offsets:

* moving back (re-reading): Kafka holds the new, lower offset and the target still holds the old
  one, so the consumer starts where it was; the replay has not happened yet, nothing was lost,
  and running the same replay again completes it;
* moving forward (skipping): Kafka already holds the new offset and wins, which is what was
  asked; running the replay again brings the target row in line.

After a crash
-------------
A member killed with ``-9`` stays in the group until its session times out; the replay is
refused until then. Once the group is empty, Kafka accepts the offsets; the local broker (tansu)
answers ``UNKNOWN_MEMBER_ID`` for that empty group for minutes. On that answer the group is
described again: with a member listed, the replay is refused naming it (``GroupActiveError``);
with none, the replay joins the empty group as its only member, commits the new offsets as that
member and leaves (:func:`streamer.ops.groups.commit_as_member`; deleting the group instead makes
tansu fail every later offset commit for it). Whatever the broker still refuses is reported by
:class:`OffsetsRefusedError` quoting its answer per partition; "a member joined" is said only
when the broker lists one.

The opposite order gives the same guarantees but could leave a forward move recorded in the
target after the broker refused the replay, to surface at the next rebalance: a skip nobody saw
succeed. A partition already at its new offset in both places, or one the group has no offset
for and would start at the new offset anyway, is not written. Re-reading is safe for the target itself: the version guard keeps every row at its
newest version, so a replay over an up-to-date target leaves it equal to the source.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Mapping, Sequence

import sqlalchemy as sa
from rich.table import Table

from streamer import logs
from streamer.apply import state
from streamer.core.errors import StreamerError
from streamer.db import create_target_engine
from streamer.ops import groups
from streamer.ops.groups import TP, Watermarks
from streamer.settings import Settings


class ReplayError(StreamerError):
    """A replay cannot be planned or carried out; nothing, or exactly what the message says, was changed."""


class GroupActiveError(ReplayError):
    """The consumer group has active members; stop them first."""


class OffsetsRefusedError(ReplayError):
    """The broker refused the new offsets; the message quotes its answer per partition."""


UNKNOWN_MEMBER = "UNKNOWN_MEMBER_ID"


def _answers(refused: Mapping[TP, str]) -> str:
    """The broker's answers, partitions with the same answer grouped."""
    by_answer: dict[str, list[str]] = {}
    for (topic, partition), answer in sorted(refused.items()):
        by_answer.setdefault(answer, []).append(f"{topic}[{partition}]")
    return "; ".join(
        f"{answer!r} for {', '.join(tps[:5])}" + (f" and {len(tps) - 5} more" if len(tps) > 5 else "")
        for answer, tps in by_answer.items()
    )


def _members_hint(settings: Settings, group: str, refused: Mapping[TP, str]) -> str:
    """Say that a member joined only when the broker now lists one."""
    if not any(UNKNOWN_MEMBER in a or "REBALANCE" in a for a in refused.values()):
        return ""
    try:
        described = groups.describe_group(settings.bootstrap_servers, group)
    except groups.BrokerError as exc:
        return f" (the group could not be described afterwards: {exc})"
    if described.members:
        return (
            f" (a member joined the group since the check: {groups.members_line(described.members)}; "
            "stop it and run the replay again)"
        )
    return f" (the group is {described.state} with no members)"


def _commit_in_empty_group(
    settings: Settings, group: str, wanted: Mapping[TP, int], refused: Mapping[TP, str]
) -> dict[TP, str]:
    """The broker answered UNKNOWN_MEMBER_ID for a group without members (the local broker does so
    after a member was killed, for minutes): join the empty group as its only member, commit the
    new offsets as that member, leave. Returns what the broker still refuses.

    (Deleting the empty group and writing its offsets again is not an option there: the local
    broker then fails every offset commit for the deleted group.)
    """
    described = groups.describe_group(settings.bootstrap_servers, group)
    if described.members:
        raise GroupActiveError(
            f"the broker refused the new offsets of group {group!r} ({_answers(refused)}): a member joined "
            f"the group since the check: {groups.members_line(described.members)}. Stop it (SIGTERM), then "
            "replay again; nothing was changed"
        )
    logs.get("replay").warning(
        "the broker refuses offsets of the empty group from outside it: committing them as a member",
        group=group,
        state=described.state,
        answer=sorted(set(refused.values())),
    )
    return groups.commit_as_member(settings, group, wanted)


# ---------------------------------------------------------------- --to
@dataclasses.dataclass(frozen=True)
class Earliest:
    def __str__(self) -> str:
        return "earliest"


@dataclasses.dataclass(frozen=True)
class Latest:
    def __str__(self) -> str:
        return "latest"


@dataclasses.dataclass(frozen=True)
class AtTime:
    """A point in time, in milliseconds since the epoch (Kafka record timestamps)."""

    ms: int

    def __str__(self) -> str:
        return dt.datetime.fromtimestamp(self.ms / 1000, dt.UTC).isoformat(timespec="milliseconds")


@dataclasses.dataclass(frozen=True)
class Positions:
    offsets: Mapping[TP, int]

    def __str__(self) -> str:
        return ", ".join(f"{t}:{p}:{o}" for (t, p), o in sorted(self.offsets.items()))


@dataclasses.dataclass(frozen=True)
class FromGroup:
    """Another group's positions (``group:NAME``): the replayed group starts exactly where that one would.

    For a group the broker cannot rebalance any more (the local broker keeps a member that is gone as
    the group's leader), or to rename a group. Kafka gets that group's committed offsets, the target
    that group's ``_streamer_offsets`` rows with their topic identities, verbatim: so the start-offset
    checks of :mod:`streamer.sources.kafka.offsetcheck` run for the new group exactly as they would for the old one,
    and nothing is skipped that the old group had not read.
    """

    group: str

    def __str__(self) -> str:
        return f"group:{self.group}"


@dataclasses.dataclass(frozen=True)
class GroupCopy:
    """What :class:`FromGroup` writes: the other group's committed Kafka offsets and stored rows."""

    committed: Mapping[TP, int]
    stored: Mapping[TP, state.StoredOffset]


Target = Earliest | Latest | AtTime | Positions | FromGroup
_POSITION = re.compile(r"^(?P<topic>[A-Za-z0-9._-]+):(?P<partition>\d+):(?P<offset>\d+)$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")


def parse_timestamp(text: str) -> int:
    """ISO-8601 date or date-time to epoch milliseconds; without a zone it is UTC."""
    value = dt.datetime.fromisoformat(text.strip())
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return int(value.timestamp() * 1000)


def parse_to(values: Sequence[str]) -> Target:
    """``--to`` values: ``earliest``, ``latest``, one ISO-8601 timestamp, or TOPIC:PARTITION:OFFSET positions."""
    tokens = [tok.strip() for value in values for tok in value.split(",") if tok.strip()]
    if not tokens:
        raise ReplayError(
            "--to is empty: give earliest, latest, an ISO-8601 timestamp or TOPIC:PARTITION:OFFSET"
        )
    if len(tokens) == 1:
        word = tokens[0].lower()
        if word == "earliest":
            return Earliest()
        if word == "latest":
            return Latest()
        if word.startswith("group:"):
            name = tokens[0][len("group:") :].strip()
            if not name:
                raise ReplayError("--to group: needs a group name (group:NAME)")
            return FromGroup(name)
        if _DATE.match(tokens[0]):
            try:
                return AtTime(parse_timestamp(tokens[0]))
            except ValueError as exc:
                raise ReplayError(f"--to {tokens[0]!r}: not an ISO-8601 timestamp ({exc})") from None
    offsets: dict[TP, int] = {}
    for tok in tokens:
        m = _POSITION.match(tok)
        if m is None:
            raise ReplayError(
                f"--to {tok!r}: expected earliest, latest, an ISO-8601 timestamp (2025-05-01T12:00:00Z) "
                "or TOPIC:PARTITION:OFFSET positions (only positions can be combined)"
            )
        key = (m["topic"], int(m["partition"]))
        offset = int(m["offset"])
        if offsets.get(key, offset) != offset:
            raise ReplayError(f"--to names {key[0]}:{key[1]} twice with different offsets")
        offsets[key] = offset
    return Positions(offsets)


# ---------------------------------------------------------------- planning (pure)
@dataclasses.dataclass(frozen=True)
class Move:
    """One partition: where the group is now (Kafka, the target, the effective start) and where it goes."""

    topic: str
    partition: int
    committed: int | None  # the group's committed Kafka offset
    stored: int | None  # the target's _streamer_offsets row
    low: int
    high: int
    new: int

    @property
    def current(self) -> int:
        """Where ``streamer consume`` would start this partition now."""
        return groups.effective_position(self.committed, self.stored, self.low)

    @property
    def reread(self) -> int:
        """Records that will be read again (moving back)."""
        return max(0, self.current - self.new)

    @property
    def skipped(self) -> int:
        """Records that will not be read (moving forward)."""
        return max(0, self.new - self.current)

    @property
    def writes(self) -> bool:
        """Whether executing the move writes anything: not when both stores hold the new offset already,
        nor when the group has no offset for the partition and would start at the new one anyway."""
        if self.committed == self.new and self.stored == self.new:
            return False
        return not (self.committed is None and self.stored is None and self.new == self.current)

    def to_json(self) -> dict[str, object]:
        return {
            "topic": self.topic,
            "partition": self.partition,
            "committed": self.committed,
            "stored": self.stored,
            "current": self.current,
            "new": self.new,
            "start": self.low,
            "end": self.high,
            "reread": self.reread,
            "skipped": self.skipped,
        }


def new_offsets(
    target: Earliest | Latest | AtTime | Positions,
    partitions: Sequence[TP],
    marks: Mapping[TP, Watermarks],
    by_time: Mapping[TP, int] | None = None,
) -> dict[TP, int]:
    """The offset each partition moves to. ``by_time``: ``offsets_for_times`` answers (-1: none)."""
    out: dict[TP, int] = {}
    for tp in partitions:
        wm = marks[tp]
        if isinstance(target, Earliest):
            out[tp] = wm.low
        elif isinstance(target, Latest):
            out[tp] = wm.high
        elif isinstance(target, AtTime):
            found = (by_time or {}).get(tp, -1)
            out[tp] = wm.high if found < 0 else min(max(found, wm.low), wm.high)
        else:
            offset = target.offsets[tp]
            if not wm.low <= offset <= wm.high:
                raise ReplayError(
                    f"offset {offset} of {tp[0]}[{tp[1]}] is outside the partition's records "
                    f"[{wm.low}, {wm.high}] (low watermark, end)"
                )
            out[tp] = offset
    return out


def plan_moves(
    partitions: Sequence[TP],
    committed: Mapping[TP, int],
    stored: Mapping[TP, int],
    marks: Mapping[TP, Watermarks],
    new: Mapping[TP, int],
) -> list[Move]:
    return [
        Move(
            t,
            p,
            committed.get((t, p)),
            stored.get((t, p)),
            marks[(t, p)].low,
            marks[(t, p)].high,
            new[(t, p)],
        )
        for t, p in sorted(partitions)
    ]


# ---------------------------------------------------------------- against the broker and the target
@dataclasses.dataclass
class ReplayPlan:
    group: str
    target: Target
    moves: list[Move]
    members: tuple[groups.Member, ...]
    group_state: str
    copy: GroupCopy | None = None  # --to group:NAME: what is written instead of the moves' offsets

    @property
    def reread(self) -> int:
        return sum(m.reread for m in self.moves)

    @property
    def skipped(self) -> int:
        return sum(m.skipped for m in self.moves)

    def to_json(self, dry_run: bool) -> dict[str, object]:
        return {
            "group": self.group,
            "to": str(self.target),
            "dry_run": dry_run,
            "group_state": self.group_state,
            "members": [m.to_json() for m in self.members],
            "moves": [m.to_json() for m in self.moves],
            "reread": self.reread,
            "skipped": self.skipped,
        }


def _stored_rows(settings: Settings, group: str) -> dict[TP, state.StoredOffset]:
    engine = create_target_engine(settings.target_url)
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table(state.offsets_table.name):
                return {}
            return state.load_offset_rows(conn, group)
    except sa.exc.SQLAlchemyError as exc:
        raise ReplayError(
            f"cannot read _streamer_offsets in the target: {str(exc).splitlines()[0]}"
        ) from None
    finally:
        engine.dispose()


def _stored_offsets(settings: Settings, group: str) -> dict[TP, int]:
    return {tp: row.next_offset for tp, row in _stored_rows(settings, group).items()}


def _plan_copy(
    settings: Settings, group: str, target: FromGroup, topics: str | None, described: groups.GroupDescription
) -> ReplayPlan:
    if target.group == group:
        raise ReplayError(f"--to group:{group} names the group being replayed")
    bootstrap = settings.bootstrap_servers
    admin = groups.admin_client(bootstrap)
    md = groups.metadata(admin, bootstrap)
    their_committed = groups.committed_offsets(admin, target.group)
    their_rows = _stored_rows(settings, target.group)
    existing = set(groups.partitions_of(md, {t for t, _ in [*their_committed, *their_rows]}))
    regex = re.compile(topics) if topics else None
    partitions = sorted(
        tp
        for tp in {*their_committed, *their_rows}
        if tp in existing and (regex is None or regex.search(tp[0]))
    )
    if not partitions:
        raise ReplayError(
            f"group {target.group!r} has no offsets (in Kafka or in the target's _streamer_offsets) for "
            "an existing topic" + (f" matching {topics!r}" if topics else "")
        )
    marks = groups.true_watermarks(bootstrap, partitions)
    theirs = {tp: row.next_offset for tp, row in their_rows.items()}
    new = {
        tp: groups.effective_position(their_committed.get(tp), theirs.get(tp), marks[tp].low)
        for tp in partitions
    }
    moves = plan_moves(
        partitions, groups.committed_offsets(admin, group), _stored_offsets(settings, group), marks, new
    )
    copy = GroupCopy(
        {tp: o for tp, o in their_committed.items() if tp in new},
        {tp: row for tp, row in their_rows.items() if tp in new},
    )
    return ReplayPlan(group, target, moves, described.members, described.state, copy)


def make_plan(settings: Settings, group: str, target: Target, topics: str | None = None) -> ReplayPlan:
    """Read the group, its offsets and the partitions' watermarks; compute every move. Changes nothing."""
    bootstrap = settings.bootstrap_servers
    admin = groups.admin_client(bootstrap)
    described = groups.describe_group(bootstrap, group)
    if isinstance(target, FromGroup):
        return _plan_copy(settings, group, target, topics, described)
    committed = groups.committed_offsets(admin, group)
    stored = _stored_offsets(settings, group)
    md = groups.metadata(admin, bootstrap)
    if isinstance(target, Positions):
        partitions = sorted(target.offsets)
        known = set(groups.partitions_of(md, {t for t, _ in partitions}))
        unknown = [f"{t}[{p}]" for t, p in partitions if (t, p) not in known]
        if unknown:
            raise ReplayError(f"no such partition on {bootstrap}: {', '.join(unknown)}")
    else:
        regex = topics or groups.consumer_regex(settings)
        with_offsets = {t for t, _ in committed} | {t for t, _ in stored}
        names = groups.group_topics(md, regex, with_offsets, explicit_regex=topics is not None)
        if not names:
            raise ReplayError(
                f"no topics to replay for group {group!r}: it has no offsets and "
                + (f"no existing topic matches {regex!r}" if regex else "no topic regex is set (--topics)")
            )
        partitions = groups.partitions_of(md, names)
    marks = groups.true_watermarks(bootstrap, partitions)
    by_time = groups.offsets_for_time(admin, partitions, target.ms) if isinstance(target, AtTime) else None
    new = new_offsets(target, partitions, marks, by_time)
    moves = plan_moves(partitions, committed, stored, marks, new)
    return ReplayPlan(group, target, moves, described.members, described.state)


def render(plan: ReplayPlan, dry_run: bool) -> Table:
    """The moves as a table: committed, stored, current and new offsets, records re-read or skipped."""
    title = f"{'dry run: ' if dry_run else ''}replay of group {plan.group} to {plan.target}"
    table = Table(title=title, title_justify="left")
    for col in ("topic", "partition", "committed", "stored", "current", "new", "re-read", "skip"):
        table.add_column(col, justify="left" if col == "topic" else "right", overflow="fold")
    for m in plan.moves:
        table.add_row(
            m.topic,
            str(m.partition),
            "-" if m.committed is None else str(m.committed),
            "-" if m.stored is None else str(m.stored),
            str(m.current),
            str(m.new),
            str(m.reread),
            str(m.skipped),
        )
    table.add_row("total", "", "", "", "", "", str(plan.reread), str(plan.skipped), style="bold")
    return table


def refuse_if_active(plan: ReplayPlan) -> None:
    if plan.members or plan.group_state in groups.ACTIVE_STATES:
        who = groups.members_line(plan.members) or "members not reported by the broker"
        raise GroupActiveError(
            f"consumer group {plan.group!r} is {plan.group_state} with {len(plan.members)} active member(s): "
            f"{who}. Stop them (SIGTERM lets them finish their batch and leave the group), then replay."
        )


def execute(settings: Settings, plan: ReplayPlan) -> None:
    """Write the new offsets: Kafka first, then the target (see the module docstring)."""
    refuse_if_active(plan)
    copy = plan.copy
    moves = plan.moves if copy is not None else [m for m in plan.moves if m.writes]
    if not moves:
        return
    admin = groups.admin_client(settings.bootstrap_servers)
    if copy is not None:
        wanted = dict(copy.committed)
    else:
        wanted = {(m.topic, m.partition): m.new for m in moves}
    refused = groups.alter_offsets(admin, plan.group, wanted) if wanted else {}
    first = ""
    if refused and all(UNKNOWN_MEMBER in answer for answer in refused.values()):
        first = f"it first answered {_answers(refused)}, then, to a commit from a member of the empty group: "
        refused = _commit_in_empty_group(settings, plan.group, wanted, refused)
    if refused:
        done = len(moves) - len(refused)
        raise OffsetsRefusedError(
            f"the broker refused {len(refused)} of {len(moves)} offsets of group {plan.group!r}: {first}"
            f"{_answers(refused)}{_members_hint(settings, plan.group, refused)}. The target was not changed; "
            f"{done} partition(s) were moved in Kafka only (those moved back still start at their old "
            "offsets, those moved forward at the new ones): run the same replay again"
        )
    engine = create_target_engine(settings.target_url)
    try:
        state.upgrade(engine)
        with engine.begin() as conn:
            if copy is not None:  # the other group's rows verbatim, identities included
                state.delete_offsets(conn, plan.group, [(m.topic, m.partition) for m in moves])
                state.save_offsets(
                    conn,
                    plan.group,
                    {tp: row.next_offset for tp, row in copy.stored.items()},
                    {tp: row.identity for tp, row in copy.stored.items()},
                    force=True,
                )
            else:
                state.save_offsets(
                    conn, plan.group, {(m.topic, m.partition): m.new for m in moves}, force=True
                )
    except sa.exc.SQLAlchemyError as exc:
        raise ReplayError(
            f"Kafka's offsets of group {plan.group!r} were moved but the target's _streamer_offsets could not "
            f"be written ({str(exc).splitlines()[0]}): partitions moved back still start at their old offsets, "
            "partitions moved forward start at the new ones; run the same replay again"
        ) from None
    finally:
        engine.dispose()
