"""Expert trajectories: training (``train``, ``pipeline``), storing (``store``, ``quantise``), converting."""
