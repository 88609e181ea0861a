"""`flashrt-ros`: one console entry, subcommands dispatched lazily to `flashrt_ros.tools.<name>`.

Each tool module exposes `main(argv: list[str]) -> int | None`. Nothing is imported until a
subcommand is chosen, so `flashrt-ros --help` stays fast and works without torch or rclpy.
Arguments after the subcommand are passed through untouched (ROS launch appends `--ros-args ...`).
"""

from __future__ import annotations

import importlib
import sys

from flashrt_ros import __version__

# name -> (module, one-line help). The module is imported only when its subcommand runs.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("flashrt_ros.tools.demo", "run the reference world with the shipped policy and show it working"),
    "host": ("flashrt_ros.tools.host", "run the ROS 2 host (planner + actor nodes)"),
    "world": ("flashrt_ros.tools.world", "run the reference world as a ROS 2 node (camera, joints)"),
    "replay": ("flashrt_ros.tools.replay", "replay a recorded bag through the policy and compare"),
    "bench": ("flashrt_ros.tools.bench", "benchmark graph vs eager, planner interference, hand-off, capsules"),
    "bench-lerobot": ("flashrt_ros.tools.bench_lerobot", "benchmark a LeRobot checkpoint: graph vs eager vs floor"),
    "bench-critic": ("flashrt_ros.tools.bench_critic", "benchmark the actor's latency alone and with the value "
                     "critic beside it (naive vs the scheduler)"),
    "bench-ros": ("flashrt_ros.tools.bench_ros", "benchmark camera message -> action chunk through the ROS host"),
    "soak": ("flashrt_ros.tools.soak", "benchmark a long run of the host against a moving robot: stalls, holds, latency"),
    "recover": ("flashrt_ros.tools.recover", "make an episode bag cut short by a crash readable again"),
    "train": ("flashrt_ros.tools.train", "train the reference policy on the reference world "
              "(--critic: the value critic)"),
    "train-critic": ("flashrt_ros.tools.train_critic", "train the reference value critic (= train --critic)"),
    "evaluate": ("flashrt_ros.tools.evaluate", "closed-loop episodes of the reference world through the host's "
                 "rules, with an injected delay: success, time, smoothness at chunk boundaries"),
}


def _usage() -> str:
    width = max(len(name) for name in SUBCOMMANDS)
    lines = [
        "usage: flashrt-ros COMMAND [ARGS...]",
        "",
        "Vision-Language-Action policies on ROS 2. Commands:",
    ]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    lines += ["", "`flashrt-ros COMMAND --help` shows a command's own options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"flashrt-ros {__version__}")
        return 0

    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"flashrt-ros: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name = SUBCOMMANDS[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        # Only a missing tool module (or its package) means "not available"; a missing
        # dependency inside the tool is a real error and keeps its traceback.
        if err.name is None or not (module_name == err.name or module_name.startswith(err.name + ".")):
            raise
        print(f"flashrt-ros: command {name!r} is not available in this install "
              f"(module {module_name} not found)", file=sys.stderr)
        return 2
    result = module.main(rest)
    return 0 if result is None else int(result)


if __name__ == "__main__":
    sys.exit(main())
