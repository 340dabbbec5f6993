"""Domain logic, no I/O: state, slots and their rules, the prompt layout, recall policy, receipts."""
