"""Dev-machine side: training, evaluation and int8 conversion.

This is the only package of the project that imports TensorFlow. Install it
with ``pip install 'edgefrac[convert]'``.
"""
