"""In-fold learning on any feature matrix: imputation, ComBat, filters, scaling, selection."""
