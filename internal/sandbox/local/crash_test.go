package local

func crashingParent() {}
func rootlessRunner() {}
