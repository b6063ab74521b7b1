"""Side-by-side benchmark suite: the same images through every way a user could run the models."""
