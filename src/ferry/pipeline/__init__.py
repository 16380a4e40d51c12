"""Engine-agnostic stages: discover files in a store, read them, group, select chains, plan."""
