"""The markdown table of `flashrt-ros evaluate --json` summaries (docs/benchmarks/rtc.md).
    python scripts/rtc_table.py docs/benchmarks/rtc/*.json"""
import json
import sys

ORDER = {"replace": 0, "blend": 1, "rtc guided": 2, "rtc trained": 3}


def name(s):
    st = s["settings"]
    return st["overlap_policy"] + (f" {st['rtc_mode']}" if st["overlap_policy"] == "rtc" else "")


def fmt(p, digits=4):
    return "n/a" if p["p50"] is None else f"{p['p50']:.{digits}f} / {p['p95']:.{digits}f}"


def main(paths):
    rows = sorted((json.load(open(p)) for p in paths),
                  key=lambda s: (s["settings"]["delay_ms"], ORDER.get(name(s), 9), s["command"]))
    print("| delay | policy | success | mean time (s) | position jump p50 / p95 | velocity jump p50 / p95 "
          "| boundary jerk RMS p50 / p95 | episode jerk RMS | d p50 | command | date |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for s in rows:
        b = s["boundary"]
        d = s["delay_steps"]["p50"]
        print(f"| {s['settings']['delay_ms']:g} ms | {name(s)} | {100 * s['success_rate']:.0f}% "
              f"({s['episodes']}) | {s['mean_episode_time_s']:.2f} | {fmt(b['position_jump'])} | "
              f"{fmt(b['velocity_jump'], 3)} | {fmt(b['jerk_rms'], 1)} | {b['episode_jerk_rms_mean']:.1f} | "
              f"{'-' if d is None else f'{d:g}'} | `{s['command']}` | {s['date']} |")
    machines = sorted({s["machine"] for s in rows})
    print(f"\nMachine: {'; '.join(machines)}")


if __name__ == "__main__":
    main(sys.argv[1:])
