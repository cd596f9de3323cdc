export default function Home() {
  return (
    <p>
      Live jobs and devices: see <a href="/app/jobs/">Jobs</a>, <a href="/app/gpus/">GPUs</a>, or{" "}
      <a href="/app/submit/">submit a job</a>. First <a href="/app/signin/">enter your API key</a>.
    </p>
  );
}
