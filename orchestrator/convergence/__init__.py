"""Whether the federation is getting anywhere: server and federated evaluation, stopping
rules, synchronous rounds, drift signals and the data sets evaluation uses."""
