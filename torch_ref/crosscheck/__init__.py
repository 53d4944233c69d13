"""Cross-framework tools: jaxcnn against the PyTorch reference.

- :mod:`.parity`: the layer-by-layer parity report (``jaxcnn parity``);
- :mod:`.compare`: the same training run in both frameworks (``jaxcnn compare``);
- :mod:`.bench`: speed and memory of both (``jaxcnn bench``);
- :mod:`.cli`: those three commands, plugged into ``jaxcnn`` through the ``jaxcnn.commands``
  entry-point group.

This subpackage depends on both ``jaxcnn`` and the reference (``torch_ref``); neither depends
on it.
"""
