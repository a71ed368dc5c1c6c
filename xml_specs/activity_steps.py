"""The Python steps of user_activity_report.xml. Each takes a weiflow Step and returns a value."""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from typing import Any

ACTIONS = ("view", "click", "like", "share")


def generate_events(step: Any) -> int:
    """Synthetic raw events for the day (stands in for a log collector)."""
    rng = random.Random(f"{step.attrs['seed']}-{step.ds}")
    users = int(step.attrs["users"])
    count = 0
    with step.write("events") as out:
        with (out.path / "part-00000.jsonl").open("w") as handle:
            for uid in range(users):
                for _ in range(rng.randint(0, 12)):
                    event = {
                        "uid": f"u{uid:05d}",
                        "action": rng.choice(ACTIONS),
                        "dwell_s": round(rng.expovariate(0.1), 2),
                    }
                    handle.write(json.dumps(event) + "\n")
                    count += 1
        out.rows = count
    step.log.info("generated %d events for %d users", count, users)
    return count


def load_events(step: Any) -> list[dict[str, Any]]:
    events = []
    for part in sorted(step.read("events").glob("part-*.jsonl")):
        with part.open() as handle:
            events.extend(json.loads(line) for line in handle if line.strip())
    return events


def per_user_stats(step: Any) -> list[dict[str, Any]]:
    minimum = int(step.attrs["min-events"])
    by_user: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in step.input:
        by_user[event["uid"]].append(event)
    stats = []
    for uid, events in sorted(by_user.items()):
        if len(events) < minimum:
            continue
        actions = Counter(e["action"] for e in events)
        stats.append(
            {
                "uid": uid,
                "events": len(events),
                "clicks": actions["click"],
                "ctr": round(actions["click"] / max(actions["view"], 1), 4),
                "dwell_s": round(sum(e["dwell_s"] for e in events), 2),
            }
        )
    return stats


def save_json(step: Any) -> int:
    with step.write("user_stats") as out:
        (out.path / "stats.json").write_text(json.dumps(step.input, indent=1))
        out.rows = len(step.input)
    return len(step.input)


def summarize(step: Any) -> dict[str, Any]:
    stats = json.loads((step.read("user_stats") / "stats.json").read_text())
    summary = {
        "day": step.ds.isoformat(),
        "users": len(stats),
        "events": sum(s["events"] for s in stats),
        "mean_ctr": round(sum(s["ctr"] for s in stats) / max(len(stats), 1), 4),
        "top_users": [s["uid"] for s in sorted(stats, key=lambda s: -s["events"])[:5]],
    }
    with step.write("report") as out:
        (out.path / "summary.json").write_text(json.dumps(summary, indent=1))
        out.rows = 1
    return summary


def quality_gate(step: Any) -> None:
    minimum = int(step.attrs["min-users"])
    if step.input["users"] < minimum:
        raise ValueError(f"only {step.input['users']} active users, expected at least {minimum}")
