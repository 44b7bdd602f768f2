// The definition of next_lookup_probe that follows next_lookup_first's in load order.
extern "C" __attribute__((visibility("default"))) char next_lookup_probe() { return 'b'; }
