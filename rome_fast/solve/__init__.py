"""Model-free maths shared by the editing methods: covariance factors and low-rank updates."""
