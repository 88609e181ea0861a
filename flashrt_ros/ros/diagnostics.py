"""What the host reports on /diagnostics: rates achieved, latency p50/p99, deadline misses, stale
inputs, rejected inputs, faults and readiness, as `diagnostic_msgs/DiagnosticArray`.

One status per concern, named `flashrt: <concern>` with the hardware id `flashrt_host` (in a
namespace: `flashrt/<ns>: <concern>` and `flashrt_host/<ns>`, so that several hosts on the global
/diagnostics stay apart): host (readiness, episode), actor (chunks), planner (subtasks), inputs
(cameras, joint states per source and per joint).
Values are strings, as the message requires; times are in milliseconds, rates in Hz.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

from .conversions import ns_to_stamp

if TYPE_CHECKING:
    from flashrt_ros.host.loop import PolicyLoop

from flashrt_ros.host.inputs import Stale
from flashrt_ros.host.status import RECENT_S

HARDWARE_ID = "flashrt_host"
WATCHDOG_PERIODS = 10     # no chunk for this many actor periods while issuing with fresh inputs: ERROR

OK, WARN, ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR


def _ms(seconds: float) -> str:
    return "nan" if seconds != seconds else f"{seconds * 1e3:.2f}"


def _status(name: str, level: bytes, message: str, values: dict) -> DiagnosticStatus:
    return DiagnosticStatus(level=level, name=name, message=message,
                            values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])


def build_report(loop: "PolicyLoop", stamp_ns: int, node=None) -> DiagnosticArray:
    """`node`: the actor node, for its namespace and its executor-backlog meter (DDS reception
    -> callback)."""
    now = time.monotonic()
    namespace = node.get_namespace().rstrip("/") if node is not None else ""
    statuses = [_host_status(loop, node, now), _actor_status(loop, now), _planner_status(loop, now),
                _inputs_status(loop, now)]
    if loop.critic is not None:
        statuses.append(_critic_status(loop, now))
    for status in statuses:
        status.name = f"flashrt{namespace}: {status.name}"
        status.hardware_id = HARDWARE_ID + namespace
    return DiagnosticArray(header=_header(stamp_ns), status=statuses)


def _header(stamp_ns: int):
    from std_msgs.msg import Header
    return Header(stamp=ns_to_stamp(stamp_ns))


def _host_status(loop: "PolicyLoop", node, now: float) -> DiagnosticStatus:
    ready, why = loop.readiness()
    level = OK if ready else WARN
    if loop.configure_error:
        level = ERROR
    if loop.callback_error.recent(now):
        level, why = ERROR, f"exception in a callback (holding): {loop.callback_error.message}"
    rec = loop.recorder
    if rec is not None and rec.errors and level == OK:
        level, why = WARN, f"recording: {rec.last_error}"
    backlog = node.input_delay if node is not None else None
    gc = getattr(loop, "gc", None)
    values = {
        "ready": str(ready).lower(), "configured": str(loop.engine is not None).lower(),
        "actor_active": str(loop.active["actor"]).lower(), "planner_active": str(loop.active["planner"]).lower(),
        "episode_id": loop.episode_id, "episode_running": str(loop.running).lower(),
        "episode_state": loop.episode_state, "end_reason": loop.end_reason, "end_detail": loop.end_detail,
        **{f"episodes_ended.{k}": v for k, v in loop.ended.items()},
        "interrupted": loop.interrupted or "", "recording": loop.recording_path or "",
        "device": str(loop.engine.device) if loop.engine is not None else "",
        "configure_error": loop.configure_error or "",
        "faults": loop.fault_count, "last_fault": loop.last_fault,
        "callback_exceptions": loop.callback_error.count, "last_callback_exception": loop.callback_error.message,
        "executor_backlog_p99_ms": _ms(backlog.percentiles(99)[0]) if backlog else "nan",
        "executor_backlog_max_ms": _ms(backlog.max()) if backlog else "nan",
        "gc_pause_max_ms": _ms(gc.max_s) if gc else "nan", "gc_pause_last_ms": _ms(gc.last_s) if gc else "nan",
        "gc_full_collections": gc.full_collections if gc else 0,
        "gc_full_pause_max_ms": _ms(gc.full_max_s) if gc else "nan",
        "gc_pause_startup_max_ms": _ms(gc.startup_max_s) if gc else "nan", "gc_frozen_objects": gc.frozen if gc else 0,
        "recording_images_dropped": rec.dropped if rec else 0, "recording_queue": rec.waiting if rec else 0,
        "recording_queue_max": rec.max_waiting if rec else 0,
        "recording_write_max_ms": _ms(rec.write_time_max_s) if rec else "nan",
        "recording_errors": rec.errors if rec else 0, "recording_last_error": rec.last_error if rec else "",
    }
    return _status("host", level, why, values)


def _actor_status(loop: "PolicyLoop", now: float) -> DiagnosticStatus:
    sched = loop.scheduler_summary().get("actor", {})
    inf50, inf99 = loop.inference.percentiles(50, 99)
    wait50, wait99 = loop.input_to_act.percentiles(50, 99)
    e2e50, e2e99 = loop.chunk_latency.percentiles(50, 99)
    cyc50, cyc99 = sched.get("latency_p50_s", float("nan")), sched.get("latency_p99_s", float("nan"))
    jitter = loop.chunks.intervals()
    values = {
        "target_hz": f"{loop.config.actor_hz:g}",
        "chunk_rate_hz": f"{loop.chunks.rate(now):.2f}",
        "cycle_rate_hz": f"{sched.get('rate_hz', 0.0):.2f}",
        "chunks_published": loop.chunks.count,
        "inference_time_p50_ms": _ms(inf50), "inference_time_p99_ms": _ms(inf99),
        # the observation's last input received (DDS) -> act() starts: the executor, the dispatcher, the checks
        "input_to_act_p50_ms": _ms(wait50), "input_to_act_p99_ms": _ms(wait99),
        "chunk_latency_p50_ms": _ms(e2e50), "chunk_latency_p99_ms": _ms(e2e99),
        "delay_estimate_ms": _ms(loop.delay.seconds()), "delay_steps": loop.delay.steps(loop.dt, loop.horizon),
        "rtc_prefixed_chunks": loop.rtc_prefixes,
        "cycle_latency_p50_ms": _ms(cyc50), "cycle_latency_p99_ms": _ms(cyc99),
        "chunk_interval_jitter_ms": _ms(float(np.std(jitter))) if jitter.size > 2 else "nan",
        "deadline_misses": sched.get("deadline_misses", 0),
        "skipped_releases": sched.get("skipped_releases", 0),
        "actions_dropped_in_past": loop.dropped_actions,
        "chunks_all_in_past": loop.late_chunks,
        "chunks_rejected_nonfinite": loop.rejected_chunks,
        "chunks_discarded": loop.discarded_chunks,
        "stops_published": loop.stops_published,
        "holding": loop.holding or "",
        "faults": loop.actor_faults, "last_error": loop.actor_error,
        "last_chunk_age_ms": _ms(now - loop.last_chunk_at) if loop.chunks.count else "inf",
    }
    stalled = _stalled(loop, now)
    if loop.actor_error and now - loop.actor_error_at <= RECENT_S:
        level, message = ERROR, f"actor fault: {loop.actor_error}"
    elif stalled:
        level, message = ERROR, stalled
    elif loop.late.recent(now):
        level, message = WARN, loop.late.message
    elif loop.holding and loop.running:
        level, message = WARN, f"holding: {loop.holding}"
    elif loop.running and loop.interrupted is None and loop.waiting:
        level, message = OK, loop.waiting
    elif loop.running and loop.interrupted is None:
        level, message = OK, f"issuing chunks at {loop.chunks.rate(now):.1f} Hz"
    else:
        level, message = OK, "idle (no episode running)" if not loop.running else f"interrupted: {loop.interrupted}"
    return _status("actor", level, message, values)


def _stalled(loop: "PolicyLoop", now: float) -> str:
    """The watchdog: the actor should be issuing (episode running, inputs fresh, a subtask, not
    holding) but no chunk came for WATCHDOG_PERIODS actor periods."""
    limit = WATCHDOG_PERIODS / loop.config.actor_hz
    since = now - max(loop.last_chunk_at, loop.issuing_since)
    if not loop._issuing() or (loop.holding and not loop.holding_stale) or loop.waiting or since <= limit:
        return ""
    if isinstance(loop.inputs.observation(loop.clock()), Stale):
        return ""
    return (f"watchdog: no chunk for {since:.2f} s while the inputs are fresh "
            f"({WATCHDOG_PERIODS} actor periods = {limit:.2f} s)")


def _critic_status(loop: "PolicyLoop", now: float) -> DiagnosticStatus:
    sched = loop.scheduler_summary().get("critic", {})
    p50, p99 = loop.critic_readings.percentiles(50, 99)
    last = loop.last_value
    cfg = loop.config
    values = {
        "target_hz": f"{cfg.critic_hz:g}", "rate_hz": f"{loop.critic_readings.rate(now):.2f}",
        "latency_p50_ms": _ms(p50), "latency_p99_ms": _ms(p99),
        "deadline_misses": sched.get("deadline_misses", 0),
        "value": f"{last.value:.4f}" if last else "", "below": loop.value_below,
        "value_threshold": f"{cfg.value_threshold:g}", "value_patience": cfg.value_patience,
        "readings_this_episode": len(loop.values), "faults": loop.critic_faults, "last_error": loop.critic_error,
    }
    if loop.critic_error and now - loop.critic_error_at <= RECENT_S:
        level, message = ERROR, f"critic fault (the actor goes on; no critic ends meanwhile): {loop.critic_error}"
    elif last is None:
        level, message = OK, "no reading yet this episode"
    else:
        level, message = OK, (f"value {last.value:.3f} (episode {last.episode_id}, {last.below}/{cfg.value_patience} "
                              f"below {cfg.value_threshold:g})")
    return _status("critic", level, message, values)


def _planner_status(loop: "PolicyLoop", now: float) -> DiagnosticStatus:
    sched = loop.scheduler_summary().get("planner", {})
    if loop.config.actor_trigger == "observation":   # the planner runs inside the actor cycle
        p50, p99 = loop.plans.percentiles(50, 99)
        sched = {**sched, "rate_hz": loop.plans.rate(now), "latency_p50_s": p50, "latency_p99_s": p99}
    sub = loop.engine.subtask if loop.engine is not None else None
    values = {
        "target_hz": f"{loop.config.planner_hz:g}",
        "rate_hz": f"{sched.get('rate_hz', 0.0):.2f}",
        "latency_p50_ms": _ms(sched.get("latency_p50_s", float("nan"))),
        "latency_p99_ms": _ms(sched.get("latency_p99_s", float("nan"))),
        "deadline_misses": sched.get("deadline_misses", 0),
        "faults": sched.get("faults", 0), "last_error": loop.planner_error or "",
        "task": loop.task_text, "subtask": sub.text if sub else "",
        "subtask_version": sub.version if sub else 0, "subtask_source": sub.source if sub else "",
        "coached": str(loop.coached).lower(),
        "rejected_task_or_coach": loop.rejected_texts, "last_rejected": loop.last_rejected_text,
    }
    if loop.planner_error:
        level, message = ERROR, f"planner fault (the actor keeps the last good subtask): {loop.planner_error}"
    elif loop.last_rejected_text and now - loop.last_rejected_text_at <= RECENT_S:
        level, message = WARN, f"rejected: {loop.last_rejected_text}"
    elif not loop.task_text:
        level, message = OK, f"waiting for a task on {loop.task_topic}"
    else:
        level, message = OK, f"subtask {sub.text!r} (v{sub.version}, {sub.source})" if sub else "not configured"
    return _status("planner", level, message, values)


def _inputs_status(loop: "PolicyLoop", now: float) -> DiagnosticStatus:
    ages = loop.inputs.ages(loop.clock())
    values: dict[str, object] = {}
    recent_errors = []
    for source, stats in loop.inputs.stats.items():
        age = ages.get(source, float("inf"))
        values[f"{source}.age_ms"] = "inf" if age == float("inf") else f"{age * 1e3:.1f}"
        values[f"{source}.received"] = stats.received
        values[f"{source}.rejected"] = stats.rejected
        values[f"{source}.last_error"] = stats.last_error
        if stats.last_error and now - stats.last_error_at <= RECENT_S:
            recent_errors.append(f"{source}: {stats.last_error}")
    for joint, source, age in loop.inputs.joint_status(loop.clock()):
        values[f"joint.{joint}.age_ms"] = "inf" if age == float("inf") else f"{age * 1e3:.1f}"
        values[f"joint.{joint}.source"] = source
    joints_problem = loop.inputs.joints_problem(loop.clock())
    values["stale_events"] = loop.stale_events
    values["unsynced_cycles"] = loop.inputs.unsynced
    values["unsynced_skips"] = loop.unsynced_skips
    stale = loop.holding if loop.holding_stale else ""
    values["stale"] = stale
    if recent_errors:
        level, message = WARN, "rejected input: " + "; ".join(recent_errors)
    elif stale:
        level, message = WARN, stale
    elif joints_problem:
        level, message = WARN, joints_problem
    else:
        level, message = OK, "inputs fresh"
    return _status("inputs", level, message, values)
