"""N2N (Ashok et al., ICLR 2018): policy-gradient layer removal, then layer shrinkage, under a budget."""
