"""The attention labeler's machinery: its settings, the recording processors and maps to masks
(the labeler itself: ``stages.labelers.attention``)."""
