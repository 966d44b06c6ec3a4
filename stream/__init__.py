"""mnstream: real-time video recognition with MobileNet."""

import os

# FFmpeg and OpenCV print their own warnings for every file they fail to open; mnstream says it once, with the fix.
os.environ.setdefault("OPENCV_LOG_LEVEL", "OFF")
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

__version__ = "0.1.0"
