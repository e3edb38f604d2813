"""The contract's handlers: the route table, the guard around every view, the views."""
