"""Training a challenger: its training set, the search, the fit, explanations."""
