package sdk

import "testing"

func TestValidateTypeName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"shared", true}, {"my-net", true}, {"v6", true},
		{"", false}, {"My", false}, {"my_net", false}, {"1net", false},
		{"a/b", false}, {"../x", false}, {"abcdefghijklmnopqrstuvwxyz0123456", false},
	} {
		err := ValidateTypeName(tc.name)
		if (err == nil) != tc.ok {
			t.Errorf("ValidateTypeName(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
	if BinaryName("shared") != "anka-net-shared" {
		t.Fatal(BinaryName("shared"))
	}
}
