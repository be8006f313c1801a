import os
import sys

# TensorFlow's C++ log lines (CUDA probing on CPU-only machines and the like) drown
# the progress lines; TF_CPP_MIN_LOG_LEVEL=0 or -v brings them back.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from pipeline.cli import quiet  # noqa: E402

quiet.hush_tensorflow(sys.argv[1:])

from pipeline.cli.commands import main  # noqa: E402

main()
