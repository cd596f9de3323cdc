// Static export, served by the API under /app (same origin as the API and its stream).
/** @type {import('next').NextConfig} */
const nextConfig = {
  output: "export",
  basePath: "/app",
  trailingSlash: true,
  images: { unoptimized: true },
};
export default nextConfig;
