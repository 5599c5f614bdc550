// placeholder so the library has a translation unit until the proxy lands
namespace agentshim::net {}
