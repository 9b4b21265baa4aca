"""The trajectory-matching engine: functional student, unrolled inner loop, outer loop."""
