"""dvflnet: DVFL-Net / Video-FocalNet models and the engine that trains, distils and evaluates them."""
__version__ = "0.1.0"
