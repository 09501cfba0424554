"""Entity-tracking base-vs-tuned circuit study (Prakash et al., ICLR 2024)."""
