"""The DeepSeek-V4-Flash runtime. Never imports agent/."""
