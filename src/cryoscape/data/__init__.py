"""Particle datasets: image preparation, in-memory and lazy batch access."""
