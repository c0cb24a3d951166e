"""Where a Python benchmark's threads spend their time: run a script and sample every thread's
stack every 2 ms (a stack sampler in the process, for machines without py-spy).

After ``STACKS_WARM`` seconds (8) it samples for ``STACKS_SECONDS`` (6), then prints per thread
the functions on the stack most often (inclusive share) and the lines most often running
(leaf share), and writes the same to ``STACKS_OUT`` (/tmp/stacks.txt). A thread blocked in C
(a lock, a socket, CUDA) shows the Python line that called it.

Run: python bench/sample_stacks.py bench/bench_torch.py --device cuda --model resnet50 ...
"""

from __future__ import annotations

import collections
import os
import runpy
import sys
import threading
import time

WARM = float(os.environ.get("STACKS_WARM", "8"))
SECONDS = float(os.environ.get("STACKS_SECONDS", "6"))


def sample(me: int) -> None:
    inclusive: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    leaf: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    samples: collections.Counter[str] = collections.Counter()
    time.sleep(WARM)
    end = time.monotonic() + SECONDS
    while time.monotonic() < end:
        names = {thread.ident: thread.name for thread in threading.enumerate()}
        for ident, frame in sys._current_frames().items():
            if ident == me:
                continue
            name = names.get(ident, str(ident))
            samples[name] += 1
            leaf[name][f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_code.co_name}:{frame.f_lineno}"] += 1
            seen = set()
            while frame is not None:
                key = f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_code.co_name}"
                if key not in seen:
                    inclusive[name][key] += 1
                    seen.add(key)
                frame = frame.f_back
        time.sleep(0.002)
    lines = []
    for name, count in samples.most_common():
        lines.append(f"== thread {name}: {count} samples")
        lines.append("  inclusive: " + "; ".join(f"{k} {v * 100 // count}%" for k, v in inclusive[name].most_common(25)))
        lines.append("  leaf: " + "; ".join(f"{k} {v * 100 // count}%" for k, v in leaf[name].most_common(12)))
    text = "\n".join(lines)
    with open(os.environ.get("STACKS_OUT", "/tmp/stacks.txt"), "w") as out:
        out.write(text + "\n")
    print(text, file=sys.stderr, flush=True)


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(f"usage: sample_stacks.py SCRIPT [ARGS ...]\n\n{__doc__}")
        sys.exit(0 if len(sys.argv) > 1 else 2)
    sampler = threading.Thread(target=lambda: sample(threading.get_ident()), daemon=True, name="sampler")
    sampler.start()
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
