"""Synthetic LabelImg-style data and the two nights of `defectflow demo`."""
