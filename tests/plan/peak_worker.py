"""Under torchrun: each rank measures the peak of a DDP training step of a few presets and rank 0 prints
the predicted and measured bytes as JSON (tests/plan/test_peak.py runs it with 2 gloo processes)."""

import json
import sys

import torch
import torch.distributed as dist

from llmlab.plan.verify import verify_peak


def main() -> None:
    dist.init_process_group("gloo")
    checks = []
    for preset, batch, seq_len, dtype, target_len in json.loads(sys.argv[1]):
        dtype = torch.float32 if dtype == "fp32" else torch.bfloat16
        checks += verify_peak([preset], batch, seq_len, torch.device("cpu"), dtype, 8192, 1, target_len, ddp=True)
    if dist.get_rank() == 0:
        print(json.dumps([[c.preset, c.component, c.predicted, c.measured] for c in checks]))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
