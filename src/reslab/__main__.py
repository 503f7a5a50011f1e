"""``python -m reslab`` (and ``torchrun -m reslab train ...``)."""

import os
import sys

from reslab.cli import main

code = main()
if int(os.environ.get("WORLD_SIZE", "1")) > 1:
    # A torchrun rank ends here, without the interpreter's teardown: destroy_process_group
    # leaves gloo's process group alive (torch keeps a reference), so its C++ teardown, which
    # joins its threads and closes its connections, ran inside module cleanup, unsynchronised
    # with the peer rank's own exit (docs/RELIABILITY.md, "DDP under load"). Every file the
    # run wrote is complete (atomic writes), and every rank has passed the final barrier.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
