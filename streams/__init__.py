"""Camera sources, fan-out hubs and stream health."""
