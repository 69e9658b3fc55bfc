/work/main/kunit/.virtio_balloon_rs_kunit.o.d: /work/main/kunit/virtio_balloon_rs_kunit.rs /work/main/kunit/../logic.rs ./rust/libcore.rmeta ./rust/libkernel.rmeta ./rust/libffi.rmeta ./rust/libcompiler_builtins.rmeta ./rust/libmacros.so ./rust/libbindings.rmeta ./rust/libuapi.rmeta ./rust/libbuild_error.rmeta

/work/main/kunit/virtio_balloon_rs_kunit.o: /work/main/kunit/virtio_balloon_rs_kunit.rs /work/main/kunit/../logic.rs ./rust/libcore.rmeta ./rust/libkernel.rmeta ./rust/libffi.rmeta ./rust/libcompiler_builtins.rmeta ./rust/libmacros.so ./rust/libbindings.rmeta ./rust/libuapi.rmeta ./rust/libbuild_error.rmeta

/work/main/kunit/virtio_balloon_rs_kunit.rs:
/work/main/kunit/../logic.rs:
./rust/libcore.rmeta:
./rust/libkernel.rmeta:
./rust/libffi.rmeta:
./rust/libcompiler_builtins.rmeta:
./rust/libmacros.so:
./rust/libbindings.rmeta:
./rust/libuapi.rmeta:
./rust/libbuild_error.rmeta:
