"""Video data: frame sampling, decoding (decord) and encoding (PyAV)."""
from .sampling import multiview_indices, segment_indices
from .video import VideoReadError, read_frames, video_length, write_video

__all__ = ["VideoReadError", "multiview_indices", "read_frames", "segment_indices", "video_length", "write_video"]
