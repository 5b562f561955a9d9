"""What keeping freed memory in the heap buys on a CPU (runtime.keep_freed_memory).

    python bench/allocator.py [--model efficientnet_lite0] [--img-size 224] [--batch-size 32] [--repeats 3]

glibc returns blocks over its mmap threshold (32 MB at most) to the kernel on free, so every forward
pass of photo-sized batches faults its activations in again. Each row runs in a fresh process (the
setting cannot be undone), median of --repeats: inference and training images/s, and the process's
system CPU time, with glibc's default behaviour and with imgcls's setting.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

from common import report

CHILD = """
import json, resource, sys, time, torch, timm
from imgcls.runtime import keep_freed_memory
model_name, size, batch, keep = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
if keep:
    keep_freed_memory()
model = timm.create_model(model_name, num_classes=10).to(memory_format=torch.channels_last)
x = torch.rand(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
def timed(step, n):
    step()
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(n):
        step()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return n * batch / (time.perf_counter() - t0), r1.ru_stime - r0.ru_stime
model.eval()
with torch.no_grad():
    eval_rate, eval_sys = timed(lambda: model(x), 4)
model.train()
optimizer = torch.optim.AdamW(model.parameters(), 1e-4)
y = torch.randint(0, 10, (batch,))
def train_step():
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
train_rate, train_sys = timed(train_step, 3)
print(json.dumps({"eval": eval_rate, "eval_sys_s": eval_sys, "train": train_rate, "train_sys_s": train_sys,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure(args, keep: bool) -> dict:
    runs = []
    for _ in range(args.repeats):
        out = subprocess.run([sys.executable, "-c", CHILD, args.model, str(args.img_size), str(args.batch_size),
                              "1" if keep else "0"], check=True, capture_output=True, text=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    return {key: round(statistics.median(run[key] for run in runs), 1) for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = [{"allocator": name, "model": args.model, "img_size": args.img_size, "batch": args.batch_size,
             **measure(args, keep)} for name, keep in (("glibc default", False), ("keep_freed_memory", True))]
    report("allocator", rows, "python bench/allocator.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
