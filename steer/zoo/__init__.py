"""Small models and builders the project ships so that everything runs offline."""
