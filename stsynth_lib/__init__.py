"""stsynth: spatio-temporal satellite image synthesis on SpaceNet 7.

The library behind the notebooks. Values arrive as arguments; nothing here
reads ``params/``.
"""

__version__ = "0.1.0"
