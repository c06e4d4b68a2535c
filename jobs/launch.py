"""`python -m jobs.launch [torchrun flags] -m jobs train ...`: torchrun, with the exit status a signal should give.

torchrun (torch.distributed.run) forwards SIGTERM to its workers, which save a checkpoint and exit 143; torchrun
itself then raises SignalException and exits 1 with a traceback. Kubernetes, shells and JobSet's failure
policies read 128+N as "stopped by signal N" (an eviction to retry, not a failure of the program), so this
module runs torchrun's own entry point unchanged and turns that one exception into 128+N. Nothing else differs:
it takes every torchrun flag, and schedules nothing of its own.
"""

import sys

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.run import main


def launch() -> None:
    try:
        main()
    except SignalException as stop:
        print(f"torchrun: stopped by {stop.sigval.name}; the workers saved their checkpoint", file=sys.stderr)
        sys.exit(128 + int(stop.sigval))


if __name__ == "__main__":
    launch()
