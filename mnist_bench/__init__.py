"""mnist-bench: tracked, reproducible benchmarks of one linear MNIST classifier across backends."""
