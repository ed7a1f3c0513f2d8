"""The on-device runtime: model backends behind one interface and the edge service."""
