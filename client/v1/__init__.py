"""TF 1.x graph mode over a varstore server: ``import varstore.v1 as tf``."""
