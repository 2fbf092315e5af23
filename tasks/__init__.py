"""The work of defectflow: pure, typed functions, each module with thin @task wrappers at its end."""
