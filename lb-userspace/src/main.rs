fn main() {
    println!("xlb: {} bytes of XDP object", xlb::loader::XLB_OBJECT.len());
}
