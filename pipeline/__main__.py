import os

# TensorFlow's C++ log lines (CUDA probing on CPU-only machines and the like) drown
# the progress lines; TF_CPP_MIN_LOG_LEVEL=0 brings them back.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from pipeline.cli.commands import main  # noqa: E402

main()
