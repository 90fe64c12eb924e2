"""Planning (torch-free): parameter count to architecture, budget to a full training plan."""
