"""The application: the `hf-seqplugins` command line, training / evaluation workflows, tasks, data, metrics,
benchmarks and plots. It uses the framework and publishing; neither imports it."""
