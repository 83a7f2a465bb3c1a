"""The Flex Template's entry point (FLEX_TEMPLATE_PYTHON_PY_FILE): submit ``streamscore stream`` to Dataflow.

The launcher runs ``python main.py --param=value ...`` with the template's parameters and the
job's Dataflow options. The worker image the template was built for (``STREAMSCORE_WORKER_IMAGE``,
baked into the launcher image by ``launch.sh build``) is passed as ``--sdk_container_image``
unless the launch gives one, so workers run exactly the dependency set of constraints.txt.
"""

import os
import sys

from streaming.job.dataflow import launch

if __name__ == "__main__":
    argv = sys.argv[1:]
    worker_image = os.environ.get("STREAMSCORE_WORKER_IMAGE")
    if worker_image and not any(a.startswith("--sdk_container_image") for a in argv):
        argv.append(f"--sdk_container_image={worker_image}")
    sys.exit(launch(argv))
