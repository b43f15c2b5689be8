"""Launched under torchrun by test_bad_input_classes: joins hasten's process group; then rank 0 fails (as a
rank whose collective timed out does) while rank 1 stalls outside any collective."""

import sys
import time

import hasten

hasten.init_distributed(timeout_s=float(sys.argv[1]))
import torch.distributed as dist  # noqa: E402

dist.barrier()
if dist.get_rank() == 1:
    time.sleep(600)  # stalled outside any collective: only the watchdog can notice the launch has ended
print(f"rank {dist.get_rank()} fails", flush=True)
sys.exit(3)
