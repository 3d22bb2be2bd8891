"""Video data: annotations, frame sampling, decoding (decord), encoding (PyAV), transforms, mixup."""
from .dataset import AnnotationError, VideoCSVDataset, read_annotations, read_class_names
from .mixup import mixup_cutmix, smooth_one_hot
from .sampling import multiview_indices, segment_indices
from .video import VideoReadError, read_frames, video_length, write_video

__all__ = [
    "AnnotationError",
    "VideoCSVDataset",
    "VideoReadError",
    "mixup_cutmix",
    "multiview_indices",
    "read_annotations",
    "read_class_names",
    "read_frames",
    "segment_indices",
    "smooth_one_hot",
    "video_length",
    "write_video",
]
